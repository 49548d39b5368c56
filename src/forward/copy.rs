//! User-space forwarding: read into a buffer, write it out.
//!
//! A direction holds its buffer only while data is in flight: it is allocated when the source
//! becomes readable and freed once the source is drained, so an idle session costs no buffer.
//! The buffer starts small and grows while reads keep filling it, so a watch event costs a few
//! KiB and a bulk transfer moves up to `copy_buffer_size` bytes per system call. Growth past
//! the first 16 KiB is charged to the forwarding [`Budget`]; past the cap the buffer stops
//! growing and the burst goes on with the buffer it has.

use std::io;

use tokio::io::Interest;

use super::budget::{Budget, Grant, UNCHARGED_BUFFER};
use super::leg::{Leg, Step};
use super::{ForwardError, Meter};

/// The first buffer of a burst, which the budget never refuses.
const INITIAL_BUFFER: usize = UNCHARGED_BUFFER;

/// Moves data from the source to the sink until the source would block or ends. Called when
/// the source is readable.
///
/// With `hand_over_bulk`, returns [`Step::Bulk`] as soon as a read fills the largest buffer:
/// at least `max_buffer` bytes were waiting, and the caller moves the rest with splice.
pub(super) async fn transfer(
    leg: &Leg<'_>,
    max_buffer: usize,
    hand_over_bulk: bool,
    budget: &Budget,
    meter: &impl Meter,
) -> Result<Step, ForwardError> {
    let mut buffer = Vec::with_capacity(INITIAL_BUFFER.min(max_buffer));
    let mut grant = budget.grant();
    let mut moved = 0u64;
    loop {
        buffer.clear();
        let (read, drained) = match read_once(leg, &mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Step::Drained(moved));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(leg.source_error(error)),
        };
        if read == 0 {
            return Ok(Step::Ended(moved));
        }
        super::write_all(leg.sink, &buffer[..read])
            .await
            .map_err(|error| leg.sink_error(error))?;
        moved += read as u64;
        leg.moved(read, meter);
        if drained {
            return Ok(Step::Drained(moved));
        }
        if hand_over_bulk && read >= max_buffer {
            return Ok(Step::Bulk(moved));
        }
        grow_if_full(&mut buffer, read, max_buffer, &mut grant);
    }
}

/// One read into `buffer`'s spare capacity: the bytes read, and whether the read drained the
/// socket.
///
/// A read that does not fill the buffer emptied the socket's receive queue, so the socket's
/// readiness is cleared right away instead of by one more read failing with EAGAIN: one
/// system call less per message, as tokio's own `AsyncRead` does. It is safe because the
/// readiness is cleared with the event observed *before* the read (the outer `try_io`): data
/// arriving after the read raises a newer event, which is not cleared.
fn read_once(leg: &Leg<'_>, buffer: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let capacity = buffer.capacity() - buffer.len();
    let mut short = None;
    let result = leg.source.try_io(Interest::READABLE, || {
        let read = leg.source.try_read_buf(buffer)?;
        if read > 0 && read < capacity {
            short = Some(read);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match (result, short) {
        (_, Some(read)) => Ok((read, true)),
        (Ok(read), None) => Ok((read, false)),
        (Err(error), None) => Err(error),
    }
}

/// A read that filled the buffer means more is waiting: take four times as much next time,
/// up to `max_buffer`, if `grant` can be raised to cover the bytes past the first
/// [`INITIAL_BUFFER`]. Otherwise the buffer keeps its size.
fn grow_if_full(buffer: &mut Vec<u8>, read: usize, max_buffer: usize, grant: &mut Grant<'_>) {
    let capacity = buffer.capacity();
    if read == capacity && capacity < max_buffer {
        let larger = (capacity * 4).min(max_buffer);
        if grant.raise_to(larger.saturating_sub(INITIAL_BUFFER)) {
            // Reserving on an empty vector allocates exactly `larger` bytes: the old
            // allocation is freed, not copied.
            buffer.clear();
            buffer.shrink_to(0);
            buffer.reserve_exact(larger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_grows_only_when_reads_fill_it() {
        let budget = Budget::new(usize::MAX);
        let mut grant = budget.grant();
        let mut buffer = Vec::with_capacity(INITIAL_BUFFER);
        grow_if_full(&mut buffer, 100, 1 << 20, &mut grant);
        assert_eq!(buffer.capacity(), INITIAL_BUFFER);
        grow_if_full(&mut buffer, INITIAL_BUFFER, 1 << 20, &mut grant);
        assert!(buffer.capacity() >= 4 * INITIAL_BUFFER);
        let mut large = Vec::with_capacity(1 << 20);
        grow_if_full(&mut large, 1 << 20, 1 << 20, &mut grant);
        assert_eq!(large.capacity(), 1 << 20, "never past the maximum");
    }

    #[test]
    fn growth_past_the_first_buffer_is_charged_and_capped() {
        let budget = Budget::new(3 * INITIAL_BUFFER);
        let mut grant = budget.grant();
        let mut buffer = Vec::with_capacity(INITIAL_BUFFER);
        grow_if_full(&mut buffer, INITIAL_BUFFER, 1 << 20, &mut grant);
        assert_eq!(buffer.capacity(), 4 * INITIAL_BUFFER);
        assert_eq!(
            budget.charged(),
            3 * INITIAL_BUFFER,
            "the first 16 KiB are free"
        );
        grow_if_full(&mut buffer, 4 * INITIAL_BUFFER, 1 << 20, &mut grant);
        assert_eq!(buffer.capacity(), 4 * INITIAL_BUFFER, "the budget is spent");
        assert_eq!(budget.refused(), 1);
        drop(grant);
        assert_eq!(budget.charged(), 0);
    }
}
