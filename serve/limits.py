"""The HTTP service's default limits, apart from serve.app so that `reasonflux serve --help` shows them
without importing fastapi."""

DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_MAX_PROBLEM_CHARS = 16_000
DEFAULT_BODY_TIMEOUT_S = 30.0  # a client must deliver its whole body within this
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = (
    32  # open connections one client address may hold; more close its idle ones
)
