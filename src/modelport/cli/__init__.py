"""Command line: argv → ServerConfig → server."""
