"""Graphs and the registry that finds them. Nothing here knows about Kafka."""

from graphwire.graphs.registry import GraphLoadError, GraphRegistry, UnknownGraphName

__all__ = ["GraphLoadError", "GraphRegistry", "UnknownGraphName"]
