"""HTTP side of Settle: the Falcon app, its resources and the waitress launcher."""
