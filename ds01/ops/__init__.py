"""Operations: reclamation (`cleanup`), bare-metal access, `doctor`, `install` and usage reports."""
