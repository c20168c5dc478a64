"""The protocol that makes numbers comparable: choice order and answer extraction."""
