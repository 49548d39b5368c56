//! The `sk_skb` stream verdict program, assembled here so the build needs no clang or BPF
//! toolchain: eBPF is a fixed 8-byte instruction format, and the program is 23 instructions.
//!
//! What it does, per socket buffer the kernel hands it (`ctx` is a `struct __sk_buff`):
//! look the receiving socket's cookie up in the peers map (cookie -> `PeerEntry`), add the
//! buffer's length to the entry's byte counter, and redirect the buffer out of the peer socket
//! (`bpf_sk_redirect_hash(skb, sockhash, &peer_cookie, 0)`). A socket without a peers entry
//! (a pair being linked or unlinked) gets `SK_PASS`: its bytes stay readable by user space,
//! which forwards them by hand. The redirect itself drops the buffer when the peer is not in
//! the sockhash, so the peers entries are only written once both sockets are in it.

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
const SK_PASS: i32 = 1;

// Registers: r0 return value, r1-r5 arguments (clobbered by calls), r6-r9 callee saved,
// r10 read-only frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

/// The stack slot holding the receiving socket's cookie (the peers map key).
const COOKIE_SLOT: i16 = -8;
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

fn call(helper: i32) -> Instruction {
    instruction(CLASS_JMP | JUMP_CALL, 0, 0, 0, helper)
}

fn exit() -> Instruction {
    instruction(CLASS_JMP | JUMP_EXIT, 0, 0, 0, 0)
}

/// The verdict program for the given peers map and sockhash descriptors.
pub(super) fn verdict(peers_fd: i32, sockhash_fd: i32) -> Vec<Instruction> {
    let [peers_lo, peers_hi] = load_map(R1, peers_fd);
    let [hash_lo, hash_hi] = load_map(R2, sockhash_fd);
    vec![
        // 0: keep ctx (the skb) across calls.
        mov_reg(R6, R1),
        // 1: r0 = cookie of the socket this skb arrived on (r1 is still ctx).
        call(HELPER_GET_SOCKET_COOKIE),
        // 2: the cookie goes on the stack: map helpers take keys by pointer.
        store_u64(R10, COOKIE_SLOT, R0),
        // 3-4: r1 = peers map.
        peers_lo,
        peers_hi,
        // 5-6: r2 = &cookie.
        mov_reg(R2, R10),
        add_imm(R2, i32::from(COOKIE_SLOT)),
        // 7: r0 = &peers[cookie], or null.
        call(HELPER_MAP_LOOKUP_ELEM),
        // 8: no peer (pair not linked): pass, to instruction 21.
        jump_if_equal(R0, 0, 12),
        // 9-10: the peer's cookie (PeerEntry.peer_cookie) on the stack.
        load_u64(R1, R0, 0),
        store_u64(R10, PEER_SLOT, R1),
        // 11: r2 = skb->len (offset 0 of struct __sk_buff).
        load_u32(R2, R6, 0),
        // 12: PeerEntry.redirected_bytes += len, atomically: user space reads the counter
        // while softirqs on any CPU add to it.
        atomic_add_u64(R0, 8, R2),
        // 13: r1 = skb.
        mov_reg(R1, R6),
        // 14-15: r2 = sockhash.
        hash_lo,
        hash_hi,
        // 16-17: r3 = &peer_cookie.
        mov_reg(R3, R10),
        add_imm(R3, i32::from(PEER_SLOT)),
        // 18: flags 0: send out of the peer socket (not into its receive queue).
        mov_imm(R4, 0),
        // 19: r0 = SK_PASS after queueing the skb on the peer, SK_DROP if it is not in the map.
        call(HELPER_SK_REDIRECT_HASH),
        // 20
        exit(),
        // 21-22: unlinked socket: its bytes stay in its own receive queue.
        mov_imm(R0, SK_PASS),
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

    #[test]
    fn the_no_peer_jump_lands_on_the_pass_exit() {
        let program = verdict(3, 4);
        let jump = 8;
        assert_eq!(program[jump].code, 0x15);
        let target = jump + 1 + usize::try_from(program[jump].offset).unwrap();
        assert_eq!(program[target], mov_imm(R0, SK_PASS));
        assert_eq!(program[target + 1], exit());
        assert_eq!(program.len(), 23);
    }
}
