"""Node agent: runs pods' processes in cgroups on one host and reports what it sees."""
