import { describe, expect, it } from 'vitest';
import { smsEncoding, smsSegments } from './sms-segments.js';

describe('smsSegments', () => {
  it('GSM-7: 160 in one SMS, then 153 a part', () => {
    expect(smsSegments('')).toBe(1);
    expect(smsSegments('a'.repeat(160))).toBe(1);
    expect(smsSegments('a'.repeat(161))).toBe(2);
    expect(smsSegments('a'.repeat(306))).toBe(2);
    expect(smsSegments('a'.repeat(307))).toBe(3);
    expect(smsEncoding('Hello @ £ é ü')).toBe('gsm7');
  });

  it('GSM-7 extension characters take two septets and are not split across parts', () => {
    expect(smsSegments('€'.repeat(80))).toBe(1);
    expect(smsSegments('€'.repeat(81))).toBe(2);
    // '{' after 152 septets does not fit the first 153-septet part, so it opens part 2:
    // part 1 = 152, part 2 = 2 + 151 = 153 -> 2 parts; one more character needs a third.
    expect(smsSegments('a'.repeat(152) + '{' + 'a'.repeat(151))).toBe(2);
    expect(smsSegments('a'.repeat(152) + '{' + 'a'.repeat(152))).toBe(3);
  });

  it('UCS-2: any non-GSM character switches the whole text, 70 then 67 a part', () => {
    expect(smsEncoding('Привет')).toBe('ucs2');
    expect(smsEncoding('Hello “quoted”')).toBe('ucs2');
    expect(smsSegments('Ж'.repeat(70))).toBe(1);
    expect(smsSegments('Ж'.repeat(71))).toBe(2);
    expect(smsSegments('Ж'.repeat(134))).toBe(2);
    expect(smsSegments('Ж'.repeat(135))).toBe(3);
    expect(smsSegments('a'.repeat(69) + 'Ж')).toBe(1);
  });

  it('counts an emoji as two UTF-16 units and never splits it', () => {
    expect(smsSegments('😀'.repeat(35))).toBe(1);
    expect(smsSegments('😀'.repeat(36))).toBe(2);
    // 66 units + an emoji (2) does not fit 67: it moves to the next part.
    expect(smsSegments('Ж'.repeat(66) + '😀' + 'Ж'.repeat(66))).toBe(3);
  });
});
