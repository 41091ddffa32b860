"""The HTTP service (serve.app.create_app wires it): solve over HTTP (plain and OpenAI-compatible),
sessions, template search, health.

    POST /v1/solve                 {"problem": ...} -> answer + session id (stream: SSE per event)
    POST /v1/chat/completions      OpenAI chat API -> the solver's answer (as vLLM's server answers)
    GET  /v1/models[/{id}]         the one model ("reasonflux" or --served-model-name)
    GET  /v1/sessions/{id}         a stored trace (?render=true adds the readable text)
    GET  /v1/templates/search      live KB retrieval
    GET  /healthz                  database and each role's backend, really asked (never needs the token)

Every error, 4xx or 5xx, unknown routes included, has OpenAI's shape ({"error": {message, type, code,
param}}; a body that does not validate is a 400 invalid_request_error); a session whose backend is down is
a 502 (or 503 when unreachable), never a 200 whose answer is the error. Each solve's session id is in the
`X-Reasonflux-Session-Id` header and in the body. With a token configured every route but /healthz and
the schema needs `Authorization: Bearer <token>`.

    schemas.py          the plain API's bodies (the solve response is SolveResult's public fields)
    guard.py            the auth-and-limits middleware: the one token check; body size, time, storability
    errors.py           the error shape, the exception handlers, a backend-down session as a 5xx
    service.py          the Solver behind the routes: worker threads, limits, held streams
    openai_request.py   OpenAI compatibility: what /v1/chat/completions takes
    openai_response.py  OpenAI compatibility: its completion, chunks and usage
    routes/             one APIRouter per concern (health, solve + sessions, templates, openai)
    protocol.py         uvicorn's h11 protocol with a header timeout and idle-connection eviction
"""
