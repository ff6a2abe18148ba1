//! Wombat membership (being written).
