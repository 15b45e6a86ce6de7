"""The segments service: audiences and computed traits over unified profiles."""
