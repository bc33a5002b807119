"""mtsmart: SMART multi-task fine-tuning."""
__version__ = "0.1.0"
