"""Names looked up in the stand-in resolve to a function that raises when called."""


def unavailable(module: str):
    def lookup(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            raise RuntimeError(f"{module}.{name} is not available: torchvision here is an import-time stand-in")

        return call

    return lookup
