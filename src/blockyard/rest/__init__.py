"""The HTTP edge both REST servers share: the volume API (`blockyard.api`) and the compute
agent's API (`blockyard.compute.api`).

`errors` turns blockyard's error tree into Cinder/Nova fault bodies, `guard` refuses hostile
requests before any route sees them (size, nesting, encodings), and `schema` validates bodies
against declarative JSON schemas with Cinder's parameter types. None of it knows the service:
it imports only the bottom layer, so the compute agent can use it without loading the volume
service or its database.
"""
