"""Sinks: where predictions go, one ``write(prediction, image)`` per processed frame."""

from edge_runtime.sinks.base import Prediction, Sink
from edge_runtime.sinks.jsonl import JsonlSink
from edge_runtime.sinks.video import FOURCC, VideoSink, annotate

__all__ = ["FOURCC", "JsonlSink", "Prediction", "Sink", "VideoSink", "annotate"]
