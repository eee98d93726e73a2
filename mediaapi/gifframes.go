package mediaapi

import (
	"bufio"
	"errors"
	"io"
)

var errBadGIF = errors.New("mediaapi: malformed GIF")

// countGIFFrames walks a GIF's blocks without decoding any pixels and
// returns how many frames it has, stopping early past limit. Decoding all
// frames at once (gif.DecodeAll) holds every one in memory, so the count
// must be known first.
func countGIFFrames(r io.Reader, limit int) (int, error) {
	br := bufio.NewReader(r)
	head := make([]byte, 13)
	if _, err := io.ReadFull(br, head); err != nil {
		return 0, errBadGIF
	}
	if string(head[:3]) != "GIF" {
		return 0, errBadGIF
	}
	if head[10]&0x80 != 0 { // global colour table
		if _, err := br.Discard(3 << (head[10]&7 + 1)); err != nil {
			return 0, errBadGIF
		}
	}
	frames := 0
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, errBadGIF
		}
		switch b {
		case 0x3B: // trailer
			return frames, nil
		case 0x21: // extension: label, then data sub-blocks
			if _, err := br.ReadByte(); err != nil {
				return 0, errBadGIF
			}
			if err := skipSubBlocks(br); err != nil {
				return 0, err
			}
		case 0x2C: // image descriptor
			desc := make([]byte, 9)
			if _, err := io.ReadFull(br, desc); err != nil {
				return 0, errBadGIF
			}
			if desc[8]&0x80 != 0 { // local colour table
				if _, err := br.Discard(3 << (desc[8]&7 + 1)); err != nil {
					return 0, errBadGIF
				}
			}
			if _, err := br.ReadByte(); err != nil { // LZW minimum code size
				return 0, errBadGIF
			}
			if err := skipSubBlocks(br); err != nil {
				return 0, err
			}
			frames++
			if frames > limit {
				return frames, nil
			}
		default:
			return 0, errBadGIF
		}
	}
}

func skipSubBlocks(br *bufio.Reader) error {
	for {
		n, err := br.ReadByte()
		if err != nil {
			return errBadGIF
		}
		if n == 0 {
			return nil
		}
		if _, err := br.Discard(int(n)); err != nil {
			return errBadGIF
		}
	}
}
