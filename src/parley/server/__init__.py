"""The HTTP and WebSocket edges, and the app factory that wires everything."""
