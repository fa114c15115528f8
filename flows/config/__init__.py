"""params.yaml as dataclasses, validated once at the edge; errors name the field."""
