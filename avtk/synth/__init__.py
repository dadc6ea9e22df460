"""The synthetic audio-visual corpus: persistent voices and faces, session variability, Kaldi layouts."""
