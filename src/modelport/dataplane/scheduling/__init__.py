"""Per model-version queues and the instances that compute on them."""
