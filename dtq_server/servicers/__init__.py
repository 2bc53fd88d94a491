"""The gRPC edge: thin servicers that convert protobuf to domain values and back."""
