"""What operators read: metrics, latency histograms, the hub watchdog, logs, systemd notify."""
