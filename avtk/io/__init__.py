"""Files on disk: atomic writes, Kaldi ark/scp tables, audio."""
