"""NASNet-style networks: placeholder until the NAS family lands."""
