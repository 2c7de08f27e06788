"""datasets_pasta: PASTA-Gen, synthetic lesions with masks and structured reports, as a Hub corpus."""
