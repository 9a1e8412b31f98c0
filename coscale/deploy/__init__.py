"""Deployment: render what runs coscale on other platforms (Kubernetes through KubeRay)."""
