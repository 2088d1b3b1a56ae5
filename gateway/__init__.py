"""REST/JSON gateway over the medsched gRPC services, generated from their contracts.

`gateway.main` is the process; `gateway.app` the HTTP application; `gateway.transcode`,
`gateway.openapi` and `gateway.problems` hold the JSON, OpenAPI and error mappings.
"""
