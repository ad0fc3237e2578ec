"""async-endpoints: asynchronous request-reply endpoints for Flask."""
