"""The data plane: messages, the mask codec, the socket-option table, shared-memory rings,
payloads (by reference or inline) and the flow policies."""
