"""Reading and writing: safetensors checkpoints, the hub, output folders, background I/O threads, dtypes."""
