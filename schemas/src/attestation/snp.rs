//! SEV-SNP verification (in progress).
