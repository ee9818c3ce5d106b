"""Where touchpoints come from: input files (JSON Lines, Avro containers, CDNOW logs) and the
synthetic multi-channel generator the demo and the benchmarks use."""
