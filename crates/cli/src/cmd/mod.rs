pub mod snapshot;
pub mod save;
pub mod cluster;
pub mod restore;
pub mod backup;
pub mod agent;
pub mod node;
pub mod inspect;
