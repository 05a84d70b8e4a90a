"""Shared test fixtures. Tests use tiny images and models so the suite fits 2 CPU cores."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CHESTKD_HOME", os.path.join(os.path.dirname(__file__), ".cache"))
