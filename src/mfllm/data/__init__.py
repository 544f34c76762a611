"""Data layer: the event schema, dataset readers, personas."""

from mfllm.data.loaders import READERS, get_reader, load_event, write_generic
from mfllm.data.personas import persona_text
from mfllm.data.schema import DataFormatError, Event, LoadReport, Post, Reaction, UserProfile

__all__ = ["READERS", "DataFormatError", "Event", "LoadReport", "Post", "Reaction", "UserProfile", "get_reader",
           "load_event", "persona_text", "write_generic"]
