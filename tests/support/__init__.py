"""Test support: real services (the distribution registry) started on loopback for the tests."""
