"""The HTTP side, on aiohttp: the app factory, the routes and their handlers,
the connection guard, the wrapper every handler goes through, JSON answers and the OpenAPI document.

Requests enter here. Handlers turn a request into intake's verified events
and storage's results into statuses; nothing below this folder imports it.
"""
