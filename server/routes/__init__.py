"""The HTTP routes, one module per concern; server.app includes their routers."""
