"""The Docker API proxy: the one enforcement point between users and the engine. `service.run` starts it."""
