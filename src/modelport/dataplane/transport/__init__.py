"""Wire protocols: each decodes, calls the pipeline, encodes, and owns its status table."""
