//! The `sk_skb` stream verdict program, assembled here so the build needs no clang or BPF
//! toolchain: eBPF is a fixed 8-byte instruction format, and the program is 40 instructions.
//!
//! What it does, per socket buffer the kernel hands it (`ctx` is a `struct __sk_buff`): look
//! the receiving socket's cookie up in the peers map (cookie -> `PeerEntry`); a socket without
//! an entry gets `SK_PASS` (its bytes stay readable by user space). Otherwise the buffer goes
//! through a gate:
//!
//! - **closed** while user space has not yet forwarded by hand every byte the program passed
//!   to it (`handed[cookie]`, written by user space, differs from `PeerEntry.passed_bytes`, or
//!   is absent): the buffer is counted as passed and stays in the socket's own queue, behind
//!   the ones before it;
//! - **open** once the two counts match: the buffer is counted as redirected and sent out of
//!   the peer socket (`bpf_sk_redirect_hash(skb, sockhash, &peer_cookie, 0)`), behind
//!   everything user space already wrote there.
//!
//! So no byte can overtake one that user space still holds, whenever it arrived: the switch
//! from forwarding by hand to forwarding in the kernel is decided per buffer, in the kernel,
//! where it cannot race with arrivals. The count of passed bytes only grows while the gate is
//! closed, so once open it stays open. Both sockets are in the sockhash before user space
//! writes any `handed` entry, so a redirect always finds its peer.

/// One eBPF instruction, `struct bpf_insn` (linux/bpf.h): opcode, then the destination
/// register in the low nibble and the source register in the high nibble of one byte
/// (little-endian bitfields), a signed 16-bit offset and a signed 32-bit immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(super) struct Instruction {
    code: u8,
    registers: u8,
    offset: i16,
    immediate: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const SIZE_W: u8 = 0x00;
const SIZE_DW: u8 = 0x18;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const SOURCE_K: u8 = 0x00;
const SOURCE_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_MOV: u8 = 0xb0;
const JUMP_EQ: u8 = 0x10;
const JUMP_NE: u8 = 0x50;
const JUMP_CALL: u8 = 0x80;
const JUMP_EXIT: u8 = 0x90;
/// `ld_imm64` with this source register loads a map file descriptor, which the verifier
/// replaces with the map's address.
const PSEUDO_MAP_FD: u8 = 1;
/// The atomic operation code (in `imm`) of a plain fetch-less atomic add.
const ATOMIC_ADD: i32 = 0x00;

// Helper function numbers (enum bpf_func_id).
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_GET_SOCKET_COOKIE: i32 = 46;
const HELPER_SK_REDIRECT_HASH: i32 = 72;

/// `enum sk_action`.
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;

// Registers: r0 return value, r1-r5 arguments (clobbered by calls), r6-r9 callee saved,
// r10 read-only frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// The stack slot holding the receiving socket's cookie (the peers map key).
const COOKIE_SLOT: i16 = -8;
// Field offsets of `bpf::PeerEntry`.
const PEER_OFFSET: i16 = 0;
const REDIRECTED_OFFSET: i16 = 8;
const PASSED_OFFSET: i16 = 16;

/// The stack slot holding the peer's cookie (the sockhash key).
const PEER_SLOT: i16 = -16;

fn instruction(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
    Instruction {
        code,
        registers: (src << 4) | (dst & 0x0f),
        offset,
        immediate,
    }
}

/// `dst = src` (64-bit).
fn mov_reg(dst: u8, src: u8) -> Instruction {
    instruction(CLASS_ALU64 | OP_MOV | SOURCE_X, dst, src, 0, 0)
}

/// `dst = immediate` (64-bit, sign-extended).
fn mov_imm(dst: u8, immediate: i32) -> Instruction {
    instruction(CLASS_ALU64 | OP_MOV | SOURCE_K, dst, 0, 0, immediate)
}

/// `dst += immediate` (64-bit).
fn add_imm(dst: u8, immediate: i32) -> Instruction {
    instruction(CLASS_ALU64 | OP_ADD | SOURCE_K, dst, 0, 0, immediate)
}

/// `*(u64 *)(dst + offset) = src`.
fn store_u64(dst: u8, offset: i16, src: u8) -> Instruction {
    instruction(CLASS_STX | MODE_MEM | SIZE_DW, dst, src, offset, 0)
}

/// `dst = *(u64 *)(src + offset)`.
fn load_u64(dst: u8, src: u8, offset: i16) -> Instruction {
    instruction(CLASS_LDX | MODE_MEM | SIZE_DW, dst, src, offset, 0)
}

/// `dst = *(u32 *)(src + offset)`, zero-extended.
fn load_u32(dst: u8, src: u8, offset: i16) -> Instruction {
    instruction(CLASS_LDX | MODE_MEM | SIZE_W, dst, src, offset, 0)
}

/// `lock *(u64 *)(dst + offset) += src`.
fn atomic_add_u64(dst: u8, offset: i16, src: u8) -> Instruction {
    instruction(
        CLASS_STX | MODE_ATOMIC | SIZE_DW,
        dst,
        src,
        offset,
        ATOMIC_ADD,
    )
}

/// `dst = map` (two instructions: the second holds the upper 32 bits, zero here).
fn load_map(dst: u8, map_fd: i32) -> [Instruction; 2] {
    [
        instruction(CLASS_LD | MODE_IMM | SIZE_DW, dst, PSEUDO_MAP_FD, 0, map_fd),
        instruction(0, 0, 0, 0, 0),
    ]
}

/// `if dst == immediate goto +offset` (counted from the next instruction).
fn jump_if_equal(dst: u8, immediate: i32, offset: i16) -> Instruction {
    instruction(CLASS_JMP | JUMP_EQ | SOURCE_K, dst, 0, offset, immediate)
}

/// `if dst != src goto +offset` (counted from the next instruction).
fn jump_if_not_equal_reg(dst: u8, src: u8, offset: i16) -> Instruction {
    instruction(CLASS_JMP | JUMP_NE | SOURCE_X, dst, src, offset, 0)
}

fn call(helper: i32) -> Instruction {
    instruction(CLASS_JMP | JUMP_CALL, 0, 0, 0, helper)
}

fn exit() -> Instruction {
    instruction(CLASS_JMP | JUMP_EXIT, 0, 0, 0, 0)
}

/// The verdict program for the given peers map, handed map and sockhash descriptors.
pub(super) fn verdict(peers_fd: i32, handed_fd: i32, sockhash_fd: i32) -> Vec<Instruction> {
    let [peers_lo, peers_hi] = load_map(R1, peers_fd);
    let [handed_lo, handed_hi] = load_map(R1, handed_fd);
    let [hash_lo, hash_hi] = load_map(R2, sockhash_fd);
    vec![
        // 0: keep ctx (the skb) across calls.
        mov_reg(R6, R1),
        // 1: r2 = skb->len (offset 0 of struct __sk_buff).
        load_u32(R2, R1, 0),
        // 2: an empty buffer (a bare FIN) carries nothing: drop it, to 38. Redirected, the
        // kernel's worker would "send" zero bytes, take that for a broken pipe, set EPIPE on
        // the peer and stop sending to it. The FIN itself is already seen by TCP.
        jump_if_equal(R2, 0, 35),
        // 3: r0 = cookie of the socket this skb arrived on (r1 is still ctx).
        call(HELPER_GET_SOCKET_COOKIE),
        // 4: the cookie goes on the stack: map helpers take keys by pointer.
        store_u64(R10, COOKIE_SLOT, R0),
        // 5-6: r1 = peers map.
        peers_lo,
        peers_hi,
        // 7-8: r2 = &cookie.
        mov_reg(R2, R10),
        add_imm(R2, i32::from(COOKIE_SLOT)),
        // 9: r0 = &peers[cookie], or null.
        call(HELPER_MAP_LOOKUP_ELEM),
        // 10: not part of a session (being set up or torn down): pass, to instruction 36.
        jump_if_equal(R0, 0, 25),
        // 11: r7 = the entry, kept across the next call.
        mov_reg(R7, R0),
        // 12-13: r1 = handed map.
        handed_lo,
        handed_hi,
        // 14-15: r2 = &cookie.
        mov_reg(R2, R10),
        add_imm(R2, i32::from(COOKIE_SLOT)),
        // 16: r0 = &handed[cookie], or null.
        call(HELPER_MAP_LOOKUP_ELEM),
        // 17: r2 = skb->len (offset 0 of struct __sk_buff).
        load_u32(R2, R6, 0),
        // 18: user space has not published a count yet: the gate is closed, to 33.
        jump_if_equal(R0, 0, 14),
        // 19-20: r1 = bytes user space has forwarded by hand, r3 = bytes passed to it.
        load_u64(R1, R0, 0),
        load_u64(R3, R7, PASSED_OFFSET),
        // 21: some passed bytes are still on their way through user space: closed, to 33.
        jump_if_not_equal_reg(R1, R3, 11),
        // 22: PeerEntry.redirected_bytes += len, atomically: user space reads the counter
        // while softirqs on any CPU add to it.
        atomic_add_u64(R7, REDIRECTED_OFFSET, R2),
        // 23-24: the peer's cookie (PeerEntry.peer_cookie) on the stack.
        load_u64(R1, R7, PEER_OFFSET),
        store_u64(R10, PEER_SLOT, R1),
        // 25: r1 = skb.
        mov_reg(R1, R6),
        // 26-27: r2 = sockhash.
        hash_lo,
        hash_hi,
        // 28-29: r3 = &peer_cookie.
        mov_reg(R3, R10),
        add_imm(R3, i32::from(PEER_SLOT)),
        // 30: flags 0: send out of the peer socket (not into its receive queue).
        mov_imm(R4, 0),
        // 31: r0 = SK_PASS after queueing the skb on the peer, SK_DROP if it is not in the map.
        call(HELPER_SK_REDIRECT_HASH),
        // 32
        exit(),
        // 33: closed: PeerEntry.passed_bytes += len. Only this socket's own (serialized)
        // verdicts write it, but user space may read it meanwhile.
        atomic_add_u64(R7, PASSED_OFFSET, R2),
        // 34-35: the buffer goes to the socket's own receive queue, for user space.
        mov_imm(R0, SK_PASS),
        exit(),
        // 36-37: no session: the bytes stay with the socket.
        mov_imm(R0, SK_PASS),
        exit(),
        // 38-39: nothing to deliver.
        mov_imm(R0, SK_DROP),
        exit(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registers_low_nibble_destination() {
        let mov = mov_reg(R6, R1);
        assert_eq!((mov.code, mov.registers), (0xbf, 0x16));
        let [ld, zero] = load_map(R2, 7);
        assert_eq!((ld.code, ld.registers, ld.immediate), (0x18, 0x12, 7));
        assert_eq!(zero, instruction(0, 0, 0, 0, 0));
    }

    /// Where the conditional jump at `at` goes.
    fn target(program: &[Instruction], at: usize) -> usize {
        at + 1 + usize::try_from(program[at].offset).unwrap()
    }

    #[test]
    fn the_jumps_land_on_their_exits() {
        let program = verdict(3, 4, 5);
        assert_eq!(program.len(), 40);
        // An empty buffer is dropped before anything else.
        let empty = target(&program, 2);
        assert_eq!(program[2], jump_if_equal(R2, 0, 35));
        assert_eq!(program[empty], mov_imm(R0, SK_DROP));
        assert_eq!(program[empty + 1], exit());
        // No session: plain pass.
        let no_session = target(&program, 10);
        assert_eq!(program[10].code, 0x15);
        assert_eq!(program[no_session], mov_imm(R0, SK_PASS));
        assert_eq!(program[no_session + 1], exit());
        // Both closed-gate jumps count the buffer as passed, then pass it.
        for at in [18, 21] {
            let closed = target(&program, at);
            assert_eq!(program[closed], atomic_add_u64(R7, PASSED_OFFSET, R2));
            assert_eq!(program[closed + 1], mov_imm(R0, SK_PASS));
            assert_eq!(program[closed + 2], exit());
        }
        assert_eq!(program[21].code, 0x5d);
        // The open gate falls through to the redirect.
        assert_eq!(program[31], call(HELPER_SK_REDIRECT_HASH));
        assert_eq!(program[32], exit());
    }
}
