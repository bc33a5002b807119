import sys

from mtsmart.cli import main

sys.exit(main())
