"""The configuration: pydantic models, loading files and environment, the seed's JSON shape, units."""
