"""The runtime shared by every backend: exact semantics, task bodies, actor hosting with
checkpoint and replay, atomic sinks. Imported on workers, so it never imports an engine."""
