"""Parity, quality and latency measurements, and the reports built from them."""
