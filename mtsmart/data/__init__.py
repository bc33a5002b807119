"""Data: task files → Examples (readers) → token ids (encoding) → Batches (loader)."""
from mtsmart.data.config import DataConfig
from mtsmart.data.encoding import EncodedSplit, GroupItem, Item, collate, encode_split
from mtsmart.data.examples import Example
from mtsmart.data.loader import TaskLoader, eval_batches, subsample
from mtsmart.data.readers import DataError, read_split

__all__ = [
    "DataConfig", "DataError", "EncodedSplit", "Example", "GroupItem", "Item", "TaskLoader",
    "collate", "encode_split", "eval_batches", "read_split", "subsample",
]
