//! TPM 2.0 quote verification (in progress).
