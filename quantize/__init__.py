"""Smaller variants of an exported fp32 graph: fp16, weight-only int8, static int8 (QDQ), dynamic quint8."""
