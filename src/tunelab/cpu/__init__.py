"""The CPU training wing: fused LoRA layers, lean MLPs and norms, per-sample attention on
packed rows, cheap dropout masks, the C heap policy and the allocator preloaded under training.
Outside training only the CLI imports it, for the allocator, before anything heavy loads."""
