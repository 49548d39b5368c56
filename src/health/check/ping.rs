//! gobetween's `ping`: a TCP connect, then close. Passes on a hung server that still listens;
//! prefer `tls` or `https` in front of an API server.

use super::{CheckError, Target};

pub async fn check(target: &Target) -> Result<(), CheckError> {
    target.connect().await.map(drop)
}
