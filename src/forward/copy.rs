//! User-space forwarding: read into a buffer, write it out.
//!
//! A direction holds its buffer only while data is in flight: it is allocated when the source
//! becomes readable and freed once the source is drained, so an idle session costs no buffer.

use std::io;

use super::{ForwardError, Leg, Meter, Step};

/// Moves data from the source to the sink until the source would block or ends. Called when
/// the source is readable.
pub(super) async fn transfer(
    leg: &Leg<'_>,
    buffer_size: usize,
    meter: &impl Meter,
) -> Result<Step, ForwardError> {
    let mut buffer = Vec::with_capacity(buffer_size);
    let mut moved = 0u64;
    loop {
        buffer.clear();
        match leg.source.try_read_buf(&mut buffer) {
            Ok(0) => return Ok(Step::Ended(moved)),
            Ok(read) => {
                super::write_all(leg.sink, &buffer[..read])
                    .await
                    .map_err(|error| leg.sink_error(error))?;
                moved += read as u64;
                leg.moved(read, meter);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Step::Drained(moved));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(leg.source_error(error)),
        }
    }
}
