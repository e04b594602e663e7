"""The request path: transport → codec → pipeline → scheduling → runtime."""
