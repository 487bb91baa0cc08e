"""The HTTP/REST front end: the KServe v2 REST protocol as Triton serves it, with Triton's
binary tensor data extension, on aiohttp running on the server's own event loop.

routes.py maps paths to handlers; tensors.py turns an infer body into a request and an answer
into a body; json_form.py writes the shared answers (server/answers.py) as JSON; status.py maps
errors to HTTP statuses (one place); listener.py starts and stops the socket, TLS included.
"""
